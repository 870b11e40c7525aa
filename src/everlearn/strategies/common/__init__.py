"""Building blocks several strategies share: adapters, buffers, penalties, merging, k-means."""
