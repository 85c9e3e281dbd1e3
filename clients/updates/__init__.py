"""The device's half of the signed update protocol (`fedadapt.updates`): fetching over HTTP
with deadlines and caps (`downloads`), verifying and applying atomically (`updater`), and
following a rollout channel with paired reports (`rollout_agent`)."""
