"""The signed update protocol that both sides speak: the server publishes and serves it
(`fedadapt.server.updates`), a device fetches and verifies it (`fedadapt.clients.updates`).

- `keys`: Ed25519 keys and their ids;
- `bundles`: a manifest and a payload, signed, with the checks a device makes;
- `signed_meta`: signed JSON metadata with a role, version and expiry (TUF's shape);
- `index`: the registry's index and timestamp;
- `cohort`: rollout channels and which devices are in a candidate's cohort;
- `rollout_report`: what a device reports on a candidate, and how it is signed.
"""
