"""Pure statistics for gates: anytime-valid sequential tests of canary against stable (`sequential`) and
reset-aware accumulation of Prometheus counters (`counters`). No I/O.

Import the modules themselves: `sequential` needs numpy and scipy, which only an operator that runs a
sequential test should load (about 40 MB), so the package does not import it for `counters`' sake."""
