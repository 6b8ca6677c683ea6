"""The build's machinery: stage records, the catalog, the executor, the lock, the stage order."""
