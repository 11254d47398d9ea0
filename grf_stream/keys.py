"""`python -m grf_stream.keys DIR [NAME ...]`: CURVE key pairs for a server and its clients.

    python -m grf_stream.keys keys server alice bob
    # keys/server.key_secret -> serve curve_server_key=keys/server.key_secret curve_clients_dir=keys/clients
    # keys/clients/alice.key  (public: what the server allows)   keys/alice.key_secret (alice keeps it)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import zmq.auth


def make_keys(directory: Path, server: str, clients: list[str]) -> None:
    (directory / "clients").mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(directory, server)
    for name in clients:
        public, _ = zmq.auth.create_certificates(directory, name)
        shutil.copy(public, directory / "clients" / Path(public).name)  # the allow-list holds public keys only


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("server", help="name of the server's key pair")
    parser.add_argument("clients", nargs="*", help="names of the clients to allow")
    args = parser.parse_args()
    make_keys(args.directory, args.server, args.clients)
    print(f"keys in {args.directory}: serve with curve_server_key={args.directory / (args.server + '.key_secret')} "
          f"curve_clients_dir={args.directory / 'clients'}")


if __name__ == "__main__":
    main()
