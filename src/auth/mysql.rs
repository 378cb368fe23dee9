//! `emqx_auth_mysql`: authentication, superuser and ACL from MySQL or MariaDB (sqlx),
//! with EMQX 4's keys, defaults and queries ([`super::sql_backend`]). Placeholders are
//! bound as parameters (`?`), never spliced into the SQL.

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow, MySqlSslMode};
use sqlx::{Column, Row as _, TypeInfo, ValueRef};

use super::settings::{host_port, Section};
use super::sql::{Dialect, Row};
use super::sql_backend::{self, Queries, SqlPool};
use crate::hooks::BoxFuture;
use crate::plugins::{Context, PluginError, Running, Spec};

pub const NAME: &str = "emqx_auth_mysql";

pub fn spec() -> Spec {
    Spec {
        name: NAME,
        description: "Authentication/ACL with MySQL",
        start,
    }
}

fn start(ctx: Context) -> BoxFuture<Result<Box<dyn Running>, PluginError>> {
    Box::pin(async move {
        let s = Section::new(&ctx.keys, "auth.mysql");
        let (host, port) = s.get("server", ("127.0.0.1".to_string(), 3306), |v| {
            host_port(v, 3306)
        })?;
        let pool = s.pool(8)?;
        let username = s.string("username", "")?;
        let password = s.string("password", "")?;
        let database = s.string("database", "mqtt")?;
        let tls = s.tls()?;
        let q = Queries::read(&s, Dialect::MySql)?;
        s.finish()?;

        let mut opts = MySqlConnectOptions::new()
            .host(&host)
            .port(port)
            .database(&database)
            .charset("utf8mb4");
        if !username.is_empty() {
            opts = opts.username(&username);
        }
        if !password.is_empty() {
            opts = opts.password(&password);
        }
        opts = match tls {
            None => opts.ssl_mode(MySqlSslMode::Disabled),
            Some(t) => {
                let mut o = opts.ssl_mode(if t.verify {
                    MySqlSslMode::VerifyIdentity
                } else {
                    MySqlSslMode::Required
                });
                if let Some(ca) = &t.cacertfile {
                    o = o.ssl_ca(ca);
                }
                if let (Some(c), Some(k)) = (&t.certfile, &t.keyfile) {
                    o = o.ssl_client_cert(c).ssl_client_key(k);
                }
                o
            }
        };
        // Lazy: a database that is down when the plugin loads is retried per query.
        let my = MySqlPoolOptions::new()
            .max_connections(pool)
            .min_connections(0)
            .acquire_timeout(q.timeout)
            .connect_lazy_with(opts);
        sql_backend::register(&ctx, NAME, Box::new(Pool(my)), q)
    })
}

struct Pool(sqlx::MySqlPool);

impl SqlPool for Pool {
    fn query(&self, sql: String, binds: Vec<String>) -> BoxFuture<Result<Vec<Row>, String>> {
        let pool = self.0.clone();
        Box::pin(async move {
            let mut q = sqlx::query(&sql);
            for b in binds {
                q = q.bind(b);
            }
            let rows = q.fetch_all(&pool).await.map_err(|e| e.to_string())?;
            rows.iter().map(to_row).collect()
        })
    }

    fn close(&self) {
        let pool = self.0.clone();
        tokio::spawn(async move { pool.close().await });
    }
}

/// A row as text; a column of a type with no text form here is an error naming it.
fn to_row(row: &MySqlRow) -> Result<Row, String> {
    let mut out = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
        let value = if raw.is_null() {
            None
        } else {
            let text = row
                .try_get::<String, _>(i)
                .or_else(|_| row.try_get::<i64, _>(i).map(|v| v.to_string()))
                .or_else(|_| row.try_get::<u64, _>(i).map(|v| v.to_string()))
                .or_else(|_| row.try_get::<bool, _>(i).map(|v| v.to_string()))
                .or_else(|_| row.try_get::<f64, _>(i).map(|v| v.to_string()))
                .or_else(|_| {
                    row.try_get::<Vec<u8>, _>(i)
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                })
                .map_err(|_| {
                    format!(
                        "column {} has type {}; cast it to a string in the query",
                        col.name(),
                        col.type_info().name()
                    )
                })?;
            Some(text)
        };
        out.push((col.name().to_string(), value));
    }
    Ok(out)
}
