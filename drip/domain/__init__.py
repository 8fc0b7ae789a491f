"""The rules, on top of the models: addresses and validators, funnels as data, consent and
suppressions, quiet hours and caps, unsubscribe tokens, and the one place that decides
"may this be sent now" (policy)."""
