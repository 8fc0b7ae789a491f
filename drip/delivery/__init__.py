"""From a Message to its provider: rendering, the rate limit, the sender, the channels (one
module per provider) and the verification of an unknown outcome."""
