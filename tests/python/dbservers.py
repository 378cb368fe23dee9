"""Real database servers for the authentication backend tests: Redis, PostgreSQL,
MariaDB and OpenLDAP from Debian's packages (tools/test.sh installs them), each started
here on its own loopback port with its own data dir under /tmp, never the system
service, and stopped at the end of the test session. Works as root (PostgreSQL runs as
the `postgres` user the package creates). Start-up is a few seconds each: no fsync,
small buffers, and only the first test that needs a server starts it.

Each server object has `port`, a way to run setup commands (`cli`, `sql`, `ldapadd`),
and `stop()`/`start()` for the tests of a backend that goes down.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import HOST, free_port

START_TIMEOUT_S = 60
LDAP_SCHEMA = Path(__file__).resolve().parents[2] / "etc" / "plugins" / "emqx_auth_ldap.schema"


def _wait(check, what, proc, log, timeout_s=START_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not ready within {timeout_s}s:\n{_tail(log)}")


def _tail(path):
    try:
        return Path(path).read_text(errors="replace")[-4000:]
    except OSError:
        return "(no log)"


def _accepts(port):
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _run(argv, input=None, check=True, user=None, env=None):
    if user is not None and os.geteuid() == 0:
        argv = ["runuser", "-u", user, "--", *argv]
    r = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=120, env=env,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise AssertionError(f"{argv[0]} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


class Server:
    """A process we started; `stop()` ends it (SIGTERM, then SIGKILL), `start()` again."""

    name = "server"

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix=f"quaydb-{self.name}-", dir="/tmp"))
        os.chmod(self.root, 0o755)
        self.port = free_port()
        self.log = self.root / "server.log"
        self.proc = None

    def argv(self):
        raise NotImplementedError

    def ready(self):
        return _accepts(self.port)

    def start(self):
        assert self.proc is None
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.root)
        _wait(self.ready, self.name, self.proc, self.log)
        return self

    def stop(self):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def cleanup(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Redis(Server):
    name = "redis"

    def argv(self):
        return ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--dir", str(self.root), "--protected-mode", "no",
                "--requirepass", self.password]

    password = "redis-secret"

    def cli(self, *args):
        """One command through redis-cli; its output."""
        env = dict(os.environ, REDISCLI_AUTH=self.password)
        return _run(["redis-cli", "-h", HOST, "-p", str(self.port), *args], env=env).stdout.strip()

    def ready(self):
        if not _accepts(self.port):
            return False
        env = dict(os.environ, REDISCLI_AUTH=self.password)
        r = _run(["redis-cli", "-h", HOST, "-p", str(self.port), "ping"], check=False, env=env)
        return r.stdout.strip() == "PONG"


def _pg_bin():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert found, "PostgreSQL is not installed (tools/test.sh installs it)"
    return found[-1].parent


class Postgres(Server):
    """User `quay` with a password (scram over TCP, what the broker uses); setup runs as
    the `postgres` superuser over the Unix socket in the data dir."""

    name = "pgsql"
    user = "quay"
    password = "pg-secret"
    database = "mqtt"

    def __init__(self):
        super().__init__()
        self.data = self.root / "data"
        self.data.mkdir()
        self.owner = "postgres" if os.geteuid() == 0 else None
        if self.owner:
            pw = pwd.getpwnam(self.owner)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chown(self.data, pw.pw_uid, pw.pw_gid)
        _run([str(_pg_bin() / "initdb"), "-D", str(self.data), "-U", "postgres", "--no-sync",
              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8"], user=self.owner)

    def argv(self):
        argv = [str(_pg_bin() / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.root), "-c", f"listen_addresses={HOST}", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "shared_buffers=16MB"]
        if self.owner:
            argv = ["runuser", "-u", self.owner, "--", *argv]
        return argv

    def psql(self, text, database="postgres"):
        return _run(["psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                     "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t"],
                    input=text).stdout

    def ready(self):
        if not _accepts(self.port):
            return False
        r = _run(["psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-c", "select 1"],
                 check=False, input="")
        return r.returncode == 0

    def sql(self, text):
        return self.psql(text, self.database)

    def setup(self):
        self.psql(f"create user {self.user} password '{self.password}';"
                  f"create database {self.database} owner {self.user};")
        return self


class MariaDB(Server):
    """User `quay`@127.0.0.1 with a password (what the broker uses); setup runs as root
    over the Unix socket."""

    name = "mysql"
    user = "quay"
    password = "my-secret"
    database = "mqtt"

    def __init__(self):
        super().__init__()
        self.data = self.root / "data"
        self.sock = self.root / "mysqld.sock"
        _run(["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=root",
              "--auth-root-authentication-method=socket", "--skip-test-db",
              "--skip-name-resolve"])

    def argv(self):
        return ["mariadbd", "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
                f"--bind-address={HOST}", f"--socket={self.sock}", "--user=root",
                f"--pid-file={self.root}/mysqld.pid", "--skip-name-resolve", "--skip-log-bin",
                "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M",
                "--innodb-flush-log-at-trx-commit=0", "--skip-innodb-doublewrite",
                f"--log-error={self.log}"]

    def ready(self):
        if not _accepts(self.port):
            return False
        r = _run(["mariadb", f"--socket={self.sock}", "-u", "root", "-e", "select 1"], check=False)
        return r.returncode == 0

    def root_sql(self, text, database=None):
        argv = ["mariadb", f"--socket={self.sock}", "-u", "root", "-N", "-B"]
        if database:
            argv.append(database)
        return _run(argv, input=text).stdout

    def sql(self, text):
        return self.root_sql(text, self.database)

    def setup(self):
        self.root_sql(f"create database {self.database};"
                      f"create user '{self.user}'@'127.0.0.1' identified by '{self.password}';"
                      f"grant all on {self.database}.* to '{self.user}'@'127.0.0.1';")
        return self


class Ldap(Server):
    """OpenLDAP with suffix dc=emqx,dc=io, manager cn=root,dc=emqx,dc=io / public (the
    EMQX defaults), the cosine/inetorgperson schemas and the `mqttUser` object class
    shipped in etc/plugins/emqx_auth_ldap.schema."""

    name = "ldap"
    suffix = "dc=emqx,dc=io"
    bind_dn = "cn=root,dc=emqx,dc=io"
    bind_password = "public"

    def __init__(self):
        super().__init__()
        (self.root / "db").mkdir()
        self.conf = self.root / "slapd.conf"
        self.conf.write_text(f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {LDAP_SCHEMA}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {self.root}/slapd.pid
database mdb
maxsize 67108864
suffix "{self.suffix}"
rootdn "{self.bind_dn}"
rootpw {self.bind_password}
directory {self.root}/db
dbnosync
index uid eq
""")

    def argv(self):
        # -d keeps slapd in the foreground (we own the process); 0 logs nothing extra.
        return ["slapd", "-d", "0", "-f", str(self.conf), "-h", f"ldap://{HOST}:{self.port}/"]

    def ldapadd(self, ldif):
        return _run(["ldapadd", "-x", "-H", f"ldap://{HOST}:{self.port}", "-D", self.bind_dn,
                     "-w", self.bind_password], input=ldif).stdout

    def ldapmodify(self, ldif):
        return _run(["ldapmodify", "-x", "-H", f"ldap://{HOST}:{self.port}", "-D", self.bind_dn,
                     "-w", self.bind_password], input=ldif).stdout


def _session_server(cls):
    @pytest.fixture(scope="session")
    def fixture():
        s = cls()
        try:
            s.start()
            if hasattr(s, "setup"):
                s.setup()
            yield s
        finally:
            s.cleanup()

    return fixture


redis_server = _session_server(Redis)
pg_server = _session_server(Postgres)
mysql_server = _session_server(MariaDB)
ldap_server = _session_server(Ldap)


class Mongo(Server):
    """nx-27017: a MongoDB wire-protocol server backed by SQLite, from PyPI (MongoDB itself
    is not packaged for Debian 12). It has no authentication, so `auth.mongo.login` is
    not exercised; setup goes through pymongo."""

    name = "mongo"

    def argv(self):
        return ["nx-27017", "--db", "memory", "--host", HOST, "-p", str(self.port),
                "--log-file", str(self.root / "nx.log"), "--pid-file", str(self.root / "nx.pid")]

    def db(self, name="mqtt"):
        import pymongo

        if getattr(self, "_client", None) is None:
            self._client = pymongo.MongoClient(f"mongodb://{HOST}:{self.port}", serverSelectionTimeoutMS=5000)
        return self._client[name]

    def stop(self):
        if getattr(self, "_client", None) is not None:
            self._client.close()
            self._client = None
        super().stop()


mongo_server = _session_server(Mongo)
