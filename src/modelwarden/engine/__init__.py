"""Where per-artifact scans run: in this process, in a pool of local processes, or on a Ray
cluster; and the results store that lets an unchanged artifact skip analysis.

Every engine runs the same unit of work (:func:`modelwarden.engine.unit.scan_one`) and hands
results back as plain JSON records (:mod:`modelwarden.engine.records`), never as pickles, so a
scanner process that a hostile artifact somehow subverted cannot hand the driver code to run.
"""
