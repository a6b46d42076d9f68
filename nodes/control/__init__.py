"""ControlNet: loading ControlNets, attaching them to conditioning, and their UNet residuals."""
