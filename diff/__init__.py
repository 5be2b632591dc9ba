"""The judgement: a pure core (paths, rules, compare, noise, stats, verdict, runtime checks),
its I/O edge (worker, evaluate) and the report model (docs/ARCHITECTURE.md)."""
