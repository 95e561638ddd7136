"""The artifact store: Parquet datasets, checkpoints, and the lineage catalog that links them."""

from data.catalog import Catalog
from data.errors import ArtifactError
from data.lineage import LineageRecord, artifact_id, code_version

__all__ = ["ArtifactError", "Catalog", "LineageRecord", "artifact_id", "code_version"]
