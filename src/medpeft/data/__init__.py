"""The pinned offline assets (hash-checked wheels read as archives) and the MEDLINE parser."""
