"""What Drip hears back: unsubscribes, delivery reports (email and SMS), inbound SMS."""
