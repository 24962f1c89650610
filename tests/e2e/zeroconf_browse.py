"""Browses _hearth._tcp with python-zeroconf (a foreign mDNS stack).
`watch SECONDS` prints one line per event: added/updated NAME port=P k=v...,
removed NAME. `snapshot SECONDS` starts with an empty cache, browses, and
prints each service found as `found NAME port=P k=v...`."""
import sys
import time

from zeroconf import ServiceBrowser, ServiceStateChange, Zeroconf

SERVICE = "_hearth._tcp.local."


def describe(zc, name):
    info = zc.get_service_info(SERVICE, name, timeout=3000)
    if info is None:
        return name
    txt = " ".join(
        f"{k.decode()}={(v or b'').decode()}" for k, v in sorted(info.properties.items())
    )
    addresses = ",".join(info.parsed_addresses())
    return f"{name} port={info.port} addresses={addresses} {txt}"


def on_change(zeroconf, service_type, name, state_change):
    if state_change is ServiceStateChange.Removed:
        print(f"removed {name}", flush=True)
    elif state_change is ServiceStateChange.Added:
        print(f"added {describe(zeroconf, name)}", flush=True)
    else:
        print(f"updated {describe(zeroconf, name)}", flush=True)


def main():
    mode, seconds = sys.argv[1], float(sys.argv[2])
    zc = Zeroconf()
    if mode == "watch":
        ServiceBrowser(zc, SERVICE, handlers=[on_change])
        print("browsing", flush=True)
        time.sleep(seconds)
    else:
        found = set()
        ServiceBrowser(
            zc, SERVICE, handlers=[lambda zeroconf, service_type, name, state_change: found.add(name)]
        )
        time.sleep(seconds)
        for name in sorted(found):
            print(f"found {describe(zc, name)}", flush=True)
    zc.close()


if __name__ == "__main__":
    main()
