"""Compliance: the auditors' side of Taishi.

* :mod:`compliance.inventory` -- CII systems and assets (CII Security Protection
  Regulations 2021, GB/T 39204-2022), CSV/YAML import/export with per-row
  errors, a change log, and :func:`~compliance.inventory.enrich` for events.
* :mod:`compliance.discovery` -- passive discovery from stored events: hosts not
  in the inventory, undeclared services, silent assets.
* :mod:`compliance.checks` -- GB/T 22239-2019 level-3 checks as data
  (``rules/compliance/*.yaml``) evaluated per asset by one generic engine.
* :mod:`compliance.report` -- HTML / CSV reports of the verdicts.
"""
