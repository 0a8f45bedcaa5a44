"""juggler's benchmark suite: ``python -m bench [--quick|--full]``.

It measures, side by side in one run, what a request costs through nginx
to: nginx alone (the ceiling), a bare parent that binds a socket and hands
it to ``runner`` workers (the limit), juggler + runner, gunicorn with the
matching worker, and circus + chaussette (a reference where it installs);
then how each supervisor restarts a killed worker, spawns processes and
idles. Everything it starts it stops by process group and by pid.
"""
