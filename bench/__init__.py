"""``make bench``: vaultd against OpenBao on this machine, in the same run.

See :mod:`bench.run` for what is measured and how.
"""
