"""emqx_auth_pgsql and emqx_auth_mysql against real PostgreSQL and MariaDB servers
(tests/python/dbservers.py), each test run for both: EMQX 4's default tables and
queries, salted hashes, superusers, ACL rows (deny wins), SQL injection through the
username, load/unload, and a database that is down."""

import hashlib
import time

import pytest

from authclient import BAD_PASSWORD, NOT_AUTHORIZED, OK, PUBLISHED, SERVER_UNAVAILABLE, Paho, connack
from conftest import HOST, free_port
from dbservers import mysql_server, pg_server  # noqa: F401 (fixtures)
from helpers import V311, unique_id, wait_until

# bcrypt("pw") at cost 4, made with libcrypt (`crypt.crypt("pw", mksalt(METHOD_BLOWFISH))`).
BCRYPT_PW = "$2b$04$xyqAR/M.IZqf.kpWa.QpnuZYEMnU/Au8YDo/TbYGSuw/0IxFSmd9y"

PG_SCHEMA = """
create table if not exists mqtt_user (
  id serial primary key, username varchar(100) unique, password varchar(100),
  salt varchar(40), is_superuser boolean default false);
create table if not exists mqtt_acl (
  id serial primary key, allow integer, ipaddr varchar(60), username varchar(100),
  clientid varchar(100), access integer, topic varchar(100));
grant select on mqtt_user, mqtt_acl to quay;
"""

MYSQL_SCHEMA = """
create table if not exists mqtt_user (
  id int unsigned not null auto_increment primary key, username varchar(100) unique,
  password varchar(100), salt varchar(35), is_superuser tinyint(1) default 0,
  created datetime default null) charset=utf8mb4;
create table if not exists mqtt_acl (
  id int unsigned not null auto_increment primary key, allow int(1) default 1,
  ipaddr varchar(60), username varchar(100), clientid varchar(100), access int(2) not null,
  topic varchar(100) not null default '') charset=utf8mb4;
"""


class Db:
    """One SQL backend under test: its plugin, settings and a way to run setup SQL."""

    def __init__(self, kind, server):
        self.kind = kind
        self.server = server
        self.plugin = f"emqx_auth_{kind}"
        self.prefix = f"auth.{kind}"
        server.sql(PG_SCHEMA if kind == "pgsql" else MYSQL_SCHEMA)

    def true(self):
        return "true" if self.kind == "pgsql" else "1"

    def sql(self, text):
        return self.server.sql(text)

    def add_user(self, name, password, superuser=False, salt=None, hashed=None):
        q = lambda v: "null" if v is None else "'" + v.replace("'", "''") + "'"
        stored = hashed if hashed is not None else hashlib.sha256(password.encode()).hexdigest()
        su = self.true() if superuser else ("false" if self.kind == "pgsql" else "0")
        self.sql(f"delete from mqtt_user where username = {q(name)};"
                 f"insert into mqtt_user (username, password, salt, is_superuser) "
                 f"values ({q(name)}, {q(stored)}, {q(salt)}, {su});")

    def add_acl(self, allow, ipaddr, username, clientid, access, topic):
        q = lambda v: "null" if v is None else "'" + v + "'"
        self.sql(f"insert into mqtt_acl (allow, ipaddr, username, clientid, access, topic) values "
                 f"({allow}, {q(ipaddr)}, {q(username)}, {q(clientid)}, {access}, {q(topic)});")

    def settings(self, **extra):
        s = {
            "allow_anonymous": "false",
            f"{self.prefix}.server": f"{HOST}:{self.server.port}",
            f"{self.prefix}.username": self.server.user,
            f"{self.prefix}.password": self.server.password,
            f"{self.prefix}.database": self.server.database,
            f"{self.prefix}.query_timeout": "3s",
        }
        s.update({f"{self.prefix}.{k}": v for k, v in extra.items()})
        return s


@pytest.fixture(params=["pgsql", "mysql"])
def db(request):
    server = request.getfixturevalue("pg_server" if request.param == "pgsql" else "mysql_server")
    return Db(request.param, server)


def start_with_plugin(broker_factory, db, settings, acl_text=None):
    b = broker_factory(start=False)
    b.overrides.update(settings)
    if acl_text is not None:
        acl = b.root / "acl.conf"
        acl.write_text(acl_text)
        b.overrides["acl_file"] = str(acl)
    b.data_dir.mkdir(parents=True, exist_ok=True)
    (b.data_dir / "loaded_plugins").write_text(f"{{{db.plugin}, true}}.\n")
    return b.start()


def test_password_superuser_and_acl_rows(broker_factory, db):
    user, root = unique_id("alice"), unique_id("root")
    db.add_user(user, "alice-pw")
    db.add_user(root, "root-pw", superuser=True)
    db.add_acl(1, None, "$all", None, 3, f"pub/{user}/#")
    db.add_acl(0, None, user, None, 2, f"pub/{user}/secret")  # deny wins over the $all row
    db.add_acl(1, None, user, "dev-1", 1, "own/%u/%c")
    db.add_acl(1, "127.0.0.1", None, None, 1, f"local/{user}")
    b = start_with_plugin(broker_factory, db, db.settings(), acl_text="")
    b.overrides["acl_nomatch"] = "deny"
    b.restart()
    for v in (5, 4):
        assert connack(b.port, user, "alice-pw", v) == OK
        assert connack(b.port, user, "wrong", v) == BAD_PASSWORD[v]
        assert connack(b.port, user, None, v) == BAD_PASSWORD[v]
        assert connack(b.port, unique_id("nobody"), "x", v) == NOT_AUTHORIZED[v]

    c = Paho(b.port, user, "alice-pw", client_id="dev-1")
    try:
        assert c.subscribe(f"own/{user}/dev-1") == 1
        assert c.subscribe(f"own/{user}/dev-2") == 0x87
        assert c.subscribe(f"local/{user}") == 1
        assert c.subscribe(f"pub/{user}/+") == 1
        assert c.publish(f"pub/{user}/x", b"hi") == 0
        assert c.wait_message() == [(f"pub/{user}/x", b"hi")]
        assert c.publish(f"pub/{user}/secret", b"no") == 0x87
        assert c.publish("elsewhere", b"no") == 0x87  # no row: acl_nomatch = deny
    finally:
        c.close()

    su = Paho(b.port, root, "root-pw", protocol=V311)
    try:
        assert su.subscribe("anything/#") == 1  # superuser: no ACL check
    finally:
        su.close()


@pytest.mark.parametrize("username", ["' OR '1'='1", "' OR 1=1 -- ", "x' UNION SELECT password FROM mqtt_user WHERE '1'='1",
                                      "*)(uid=*", "a b"])
def test_sql_injection_through_the_username_never_authenticates(broker_factory, db, username):
    """Spliced into `where username = '%u'`, these would select some user's row and log in
    with that user's password; bound as a parameter they are just names nobody has."""
    db.sql("delete from mqtt_user;")
    db.add_user("victim", "victim-pw")
    b = start_with_plugin(broker_factory, db, db.settings())
    assert connack(b.port, "victim", "victim-pw") == OK
    for v in (5, 4):
        assert connack(b.port, username, "victim-pw", v) == NOT_AUTHORIZED[v]


def test_salt_and_bcrypt(broker_factory, db):
    salted, crypted = unique_id("salted"), unique_id("crypted")
    db.add_user(salted, None, salt="NaCl", hashed=hashlib.sha256(b"NaClpw").hexdigest())
    query = "select password, salt from mqtt_user where username = '%u' limit 1"
    b = start_with_plugin(broker_factory, db, db.settings(password_hash="salt,sha256", auth_query=query))
    assert connack(b.port, salted, "pw") == OK
    assert connack(b.port, salted, "NaClpw") == BAD_PASSWORD[5]
    b.stop()
    db.add_user(crypted, None, hashed=BCRYPT_PW)
    b.overrides.update(db.settings(password_hash="bcrypt"))
    b.start()
    assert connack(b.port, crypted, "pw") == OK
    assert connack(b.port, crypted, "px") == BAD_PASSWORD[5]


def test_load_unload_and_a_bad_query(broker_factory, db):
    user = unique_id("u")
    db.add_user(user, "pw")
    b = broker_factory(start=False)
    b.overrides.update(db.settings())
    b.start()
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    assert connack(b.port, user, "pw") == NOT_AUTHORIZED[5]
    r = b.ctl("plugins", "load", db.plugin)
    assert r.returncode == 0, r.stdout + r.stderr
    assert connack(b.port, user, "pw") == OK
    r = b.ctl("plugins", "unload", db.plugin)
    assert r.returncode == 0, r.stdout + r.stderr
    assert connack(b.port, user, "pw") == NOT_AUTHORIZED[5]
    # A query whose quote is not closed is refused at load, naming the key.
    b.stop()
    b.overrides[f"{db.prefix}.auth_query"] = "select password from mqtt_user where username = '%u"
    b.start()
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    r = b.ctl("plugins", "load", db.plugin)
    assert r.returncode != 0 and f"{db.prefix}.auth_query" in r.stdout, r.stdout


def test_database_down_is_passed_over_or_refused_per_on_error(broker_factory, db):
    port = free_port()  # nothing listens there
    settings = db.settings(server=f"{HOST}:{port}", query_timeout="1s")
    settings["allow_anonymous"] = "true"
    b = start_with_plugin(broker_factory, db, settings)
    started = time.monotonic()
    for _ in range(5):
        assert connack(b.port, "anyone", "pw") == OK
    assert time.monotonic() - started < 10
    assert 1 <= b.log_tail().count("authentication backend failed") <= 2
    b.stop()
    b.overrides[f"{db.prefix}.on_error"] = "deny"
    b.start()
    assert connack(b.port, "anyone", "pw", 5) == SERVER_UNAVAILABLE[5]
    assert connack(b.port, "anyone", "pw", 4) == SERVER_UNAVAILABLE[4]
