"""Route groups that live in their own modules.

:func:`taishi.api.app.create_app` imports every module in this package and
calls its ``register(app, ctx)`` before the console is mounted. ``ctx`` is a
:class:`taishi.api.app.RouteContext`: the shared store, ruleset, inventory,
search and window helpers of the app. Permissions come from
``taishi.api.app.perm`` / ``require`` (see :mod:`taishi.api.auth` for roles).
"""
