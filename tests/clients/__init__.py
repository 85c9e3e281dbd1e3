from fedadapt.simconfig import SimConfig

# A tiny federation for device-level tests: 4 clients, one short epoch everywhere.
SMALL = SimConfig(
    num_clients=4,
    clients_per_round=2,
    local_epochs=1,
    personal_epochs=1,
    local_only_epochs=1,
    rounds=1,
)
