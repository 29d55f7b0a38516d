"""What pixcade's two web servers (`pixcade serve`, `pixcade drawbench rate`) share.

Both are Starlette apps run by uvicorn, built by `guard.guarded_app` and `server.WebServer`
with one configuration (`limits.WebLimits`): which Host names are answered, which
requests another web site can make the browser send (refused), per-client limits,
security headers on every response, JSON bodies read with size, depth, number and time
limits (`body.read_json`), and deadlines on slow or idle connections. A server module
here only adds its routes.
"""
