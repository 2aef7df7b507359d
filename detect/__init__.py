"""Detection: Sigma rules (single-event, vectorised over Arrow) and the stage facade.

>>> from detect import RuleSet, Detector  # doctest: +SKIP
"""

from detect.pipeline import DetectCounters, DetectResult, Detector
from detect.sigma import Issue, Rule, RuleSet, threat_from_tags

__all__ = ["Detector", "DetectResult", "DetectCounters", "RuleSet", "Rule", "Issue", "threat_from_tags"]
