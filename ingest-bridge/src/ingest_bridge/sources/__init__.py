"""Upstream sources of the bridge: MQTT, AMQP, HTTP and the device-events relay."""
