"""The server's half of the signed update protocol (`fedadapt.updates`): publishing signed
versions (`publish`), serving them over HTTP (`service`), staged rollouts with a guardrail
(`rollout`), the devices' reports (`reports`) and the rollout's status (`status`)."""
