"""The operator's console (`fedadapt console`): one local web page over the files a fleet
already writes (a run's report, metrics and checkpoints, `devices.json`, the rollout state
and the devices' signed reports), so the everyday questions need no JSON read by hand.

`readers` reads a file with a size cap and turns a missing, torn or huge one into a
one-line notice; `runs` and `fleet` build the three views from them; `access` decides who
may read and act; `app` serves the page, its assets and the views as JSON.
"""
