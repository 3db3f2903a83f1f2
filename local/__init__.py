"""The whole of Cirrus on one machine: moto for AWS, a local API gateway, SQS pollers, the heavy stand-in."""
