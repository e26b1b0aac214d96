"""Keeps tritonserver serving the Laminar model (see supervisor.py); `./build.sh serve` runs it.

A package of its own, apart from `laminar`, so that the supervisor imports neither torch nor the
engine: it starts in a fraction of a second and holds a few MB. The two names below are the
contract between the supervisor and the model.
"""
import signal

# Sent by the supervisor to the backend stubs shortly before tritonserver's exit timeout: the model
# ends the requests still running (laminar.serving.drain_signal).
DRAIN_SIGNAL = signal.SIGUSR1
# Set for tritonserver, and so for the stubs, by the supervisor: a model whose engine fails then
# exits its stub, which the supervisor answers by restarting the server.
SUPERVISED_ENV = "LAMINAR_SUPERVISED"
