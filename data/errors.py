class ArtifactError(RuntimeError):
    """An artifact is missing, corrupt, or inconsistent with the catalog. The message names it."""
