"""What starts both sides, and so sits above `fedadapt.server` and `fedadapt.clients`.

- `simulate`: a run on Flower's Simulation Engine (`flwr run .`), resumable;
- `deploy`: the same apps on Flower's Deployment Engine on loopback (TLS, node auth);
- `certs`: the CA, the SuperLink's certificate and SuperNode keys;
- `package`: everything a device needs, as a folder to copy onto it;
- `device_report`: the deployed devices' own held-out figures, as devices.json;
- `rollout_fleet`, `rollout_pool`: a simulated fleet of devices following a staged rollout.
"""
