"""`signatures bench`: throughput, latency and memory, measured in one run on this machine."""
