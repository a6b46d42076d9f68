"""Masks: loading, converting, making, growing, feathering, cropping and combining them."""
