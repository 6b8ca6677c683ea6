"""Stage curate: filters, exact and near duplicates, evaluation copies."""
