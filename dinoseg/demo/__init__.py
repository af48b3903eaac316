"""Local browser demos (one sub-package per system), started with `dinoseg demo NAME`."""
