"""compofa-bench: latency profiling, lookup tables and search for once-for-all networks."""

__version__ = "0.1.0"
