"""Stage match: captions x queries -> matches."""
