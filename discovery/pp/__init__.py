"""``dc.pp``: preprocessing — QC metrics, normalisation, gene selection, donor-held-out split."""

from discovery.pp.preprocess import (
    PreprocessConfig,
    drop_empty,
    normalize,
    preprocess,
    preprocess_unlabelled,
    qc_metrics,
    select_genes,
    split_donors,
)

__all__ = ["PreprocessConfig", "drop_empty", "normalize", "preprocess", "preprocess_unlabelled",
           "qc_metrics",
           "select_genes", "split_donors"]
