"""iotctl."""
