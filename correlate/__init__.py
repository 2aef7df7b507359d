"""Correlation of single-rule matches over event time (Sigma v2 correlation rules)."""

from correlate.sigma_correlation import (
    SUPPORTED_CORRELATION_TYPES,
    CorrelationEngine,
    CorrelationSpec,
    ProcessResult,
)

__all__ = ["CorrelationEngine", "CorrelationSpec", "ProcessResult", "SUPPORTED_CORRELATION_TYPES"]
