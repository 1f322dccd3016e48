"""Development helpers behind ``make run``: not used by the daemon or agent.

They need the test extras (moto's server mode), which ``make run`` installs.
"""
