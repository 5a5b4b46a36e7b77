//! `ccc-etl ddl`: the statements that register a Parquet root's three tables in a query engine,
//! from the files' own Arrow schema (so they cannot drift from what is written), for the root as
//! configured (a local directory or an object-storage URL). Pure: text in, text out.

use std::fmt::Write as _;

use arrow::datatypes::DataType;

use crate::config::{ObjectUrl, RootUrl, StoreKind};
use crate::record::Table;

/// An engine `ddl` writes statements for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// DuckDB: a view per table over `read_parquet` with Hive partitioning.
    Duckdb,
    /// Spark SQL: a partitioned Parquet data-source table per table, partitions recovered.
    Spark,
    /// Trino (Hive connector): an external table per table, partitions synced.
    Trino,
    /// StarRocks: a file external table per table.
    Starrocks,
    /// Amazon Athena: an external table per table, partition projection on `dt`.
    Athena,
    /// MaxCompute: an OSS external table per table, partitions loaded with MSCK.
    Maxcompute,
}

impl Engine {
    /// The engine's own name.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Duckdb => "DuckDB",
            Engine::Spark => "Spark SQL",
            Engine::Trino => "Trino",
            Engine::Starrocks => "StarRocks",
            Engine::Athena => "Athena",
            Engine::Maxcompute => "MaxCompute",
        }
    }
}

/// Where the statements point, and under which schema.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The root, local directories absolute.
    pub root: &'a RootUrl,
    /// The schema (database) the tables go in; for Trino `catalog.schema`. `None`: the engine's
    /// default (DuckDB's current schema, MaxCompute's current project).
    pub schema: Option<&'a str>,
    /// The bucket's region (`[parquet] region`), for MaxCompute's OSS endpoint.
    pub region: Option<&'a str>,
    /// The Azure storage account, for `az://` roots on engines that address them by account.
    pub azure_account: Option<&'a str>,
}

/// The statements for `engine`, or why it cannot read this root.
pub fn render(engine: Engine, t: &Target<'_>) -> Result<String, String> {
    if let Some(s) = t.schema {
        check_schema(engine, s)?;
    }
    let mut out = header(engine, t);
    for table in Table::ALL {
        let location = location(engine, t, table)?;
        let stmt = match engine {
            Engine::Duckdb => duckdb(t, table, &location),
            Engine::Spark => spark(t, table, &location),
            Engine::Trino => trino(t, table, &location),
            Engine::Starrocks => starrocks(t, table, &location),
            Engine::Athena => athena(t, table, &location),
            Engine::Maxcompute => maxcompute(t, table, &location),
        };
        out.push('\n');
        out.push_str(&stmt);
    }
    Ok(out)
}

/// A schema name: letters, digits and `_`, not starting with a digit; for Trino
/// `catalog.schema`. Anything else is refused rather than quoted, so the same name works in
/// every engine's dialect.
fn check_schema(engine: Engine, s: &str) -> Result<(), String> {
    let parts: Vec<&str> = s.split('.').collect();
    let ident = |p: &str| {
        p.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let arity_ok = parts.len() == 1 || (engine == Engine::Trino && parts.len() == 2);
    if arity_ok && parts.iter().all(|p| ident(p)) {
        Ok(())
    } else {
        Err(format!(
            "--schema {s:?}: a schema is letters, digits and '_', not starting with a digit{}",
            if engine == Engine::Trino {
                " (for Trino: catalog.schema)"
            } else {
                ""
            }
        ))
    }
}

/// A SQL string literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn qualified(t: &Target<'_>, table: Table) -> String {
    match t.schema {
        Some(s) => format!("{s}.{}", table.name()),
        None => table.name().to_string(),
    }
}

/// The default schema of engines that need one.
fn default_schema(engine: Engine) -> Option<&'static str> {
    match engine {
        Engine::Duckdb | Engine::Maxcompute => None,
        Engine::Trino => Some("hive.ccc"),
        Engine::Spark | Engine::Starrocks | Engine::Athena => Some("ccc"),
    }
}

/// `target` with the engine's default schema when none was given.
pub fn with_default_schema<'a>(engine: Engine, t: Target<'a>) -> Target<'a> {
    Target {
        schema: t.schema.or(default_schema(engine)),
        ..t
    }
}

fn header(engine: Engine, t: &Target<'_>) -> String {
    let mut out = format!(
        "-- ccc-etl tables on {} for {}: inbound_trend, outbound_trend, overall_trend.\n\
         -- stats_time and fetched_at are UTC; dt is the local day of stats_time in the zone the\n\
         -- root was written in; extra holds the fields ccc-etl does not know, as JSON text.\n",
        t.root,
        engine.name()
    );
    let create_schema = match (engine, t.schema) {
        (Engine::Maxcompute, _) | (_, None) => None,
        (Engine::Starrocks, Some(s)) => Some(format!("CREATE DATABASE IF NOT EXISTS {s};")),
        (Engine::Athena, Some(s)) => Some(format!("CREATE DATABASE IF NOT EXISTS {s};")),
        (_, Some(s)) => Some(format!("CREATE SCHEMA IF NOT EXISTS {s};")),
    };
    if let Some(stmt) = create_schema {
        let _ = writeln!(out, "\n{stmt}");
    }
    if let RootUrl::Object(o) = t.root
        && let Some(note) = credentials_note(engine, o)
    {
        let _ = writeln!(out, "-- {note}");
    }
    out
}

/// What the engine needs to read the store, said once at the top.
fn credentials_note(engine: Engine, o: &ObjectUrl) -> Option<&'static str> {
    Some(match (engine, o.kind) {
        (Engine::Duckdb, StoreKind::Oss) => {
            "DuckDB reads OSS through its S3-compatible API: CREATE SECRET (TYPE s3, ENDPOINT 'oss-<region>.aliyuncs.com', URL_STYLE 'vhost', KEY_ID ..., SECRET ...) first."
        }
        (Engine::Duckdb, StoreKind::Azure) => {
            "Needs DuckDB's azure extension and a secret: CREATE SECRET (TYPE azure, CONNECTION_STRING ...) first."
        }
        (Engine::Duckdb, _) => {
            "Needs DuckDB's httpfs extension and a secret for the bucket (CREATE SECRET ...) first."
        }
        (Engine::Spark, StoreKind::Oss) => {
            "Needs hadoop-aliyun on the classpath and fs.oss.endpoint and credentials set."
        }
        (Engine::Maxcompute, _) => {
            "MaxCompute reads OSS as the RAM role AliyunODPSDefaultRole (authorize it once); for another role add WITH SERDEPROPERTIES ('odps.properties.rolearn' = 'acs:ram::<uid>:role/<role>') before STORED AS."
        }
        (Engine::Trino, StoreKind::Oss) => {
            "OSS through the S3 file system: set s3.endpoint to the bucket's region (https://oss-<region>.aliyuncs.com) in the catalog."
        }
        _ => return None,
    })
}

/// Where one table's files are, as `engine` addresses the root's store.
fn location(engine: Engine, t: &Target<'_>, table: Table) -> Result<String, String> {
    let o = match t.root {
        RootUrl::Local(p) => {
            return match engine {
                Engine::Duckdb | Engine::Spark => Ok(format!("{}/{table}", p.display())),
                _ => Err(format!(
                    "{} reads tables from shared storage, and the root {} is a local \
                     directory: put the root on object storage ([parquet] root = \"s3://...\")",
                    engine.name(),
                    t.root
                )),
            };
        }
        RootUrl::Object(o) => o,
    };
    let path = if o.prefix.is_empty() {
        table.name().to_string()
    } else {
        format!("{}/{table}", o.prefix)
    };
    let refuse = |what: &str| {
        Err(format!(
            "{} reads {what} only, and the root is {}",
            engine.name(),
            t.root
        ))
    };
    let azure = |scheme: &str| -> Result<String, String> {
        let account = t.azure_account.ok_or_else(|| {
            format!(
                "{} addresses Azure by storage account: set AZURE_STORAGE_ACCOUNT_NAME",
                engine.name()
            )
        })?;
        Ok(format!(
            "{scheme}://{}@{account}.dfs.core.windows.net/{path}",
            o.bucket
        ))
    };
    match (engine, o.kind) {
        (Engine::Athena, StoreKind::S3) => Ok(format!("s3://{}/{path}/", o.bucket)),
        (Engine::Athena, _) => refuse("Amazon S3 (s3://)"),
        (Engine::Maxcompute, StoreKind::Oss) => {
            let region = t.region.ok_or(
                "MaxCompute reads OSS through the region's internal endpoint: set [parquet] \
                 region (for example \"cn-hangzhou\")",
            )?;
            Ok(format!(
                "oss://oss-{region}-internal.aliyuncs.com/{}/{path}/",
                o.bucket
            ))
        }
        (Engine::Maxcompute, _) => refuse("Alibaba Cloud OSS (oss://)"),
        (Engine::Duckdb, StoreKind::Oss) => Ok(format!("s3://{}/{path}", o.bucket)),
        (Engine::Spark, StoreKind::S3) => Ok(format!("s3a://{}/{path}", o.bucket)),
        (Engine::Trino, StoreKind::Oss) => Ok(format!("s3://{}/{path}", o.bucket)),
        (Engine::Spark | Engine::Trino | Engine::Starrocks, StoreKind::Azure) => azure("abfss"),
        (_, kind) => Ok(format!("{}://{}/{path}", kind.scheme(), o.bucket)),
    }
}

/// The column type of an Arrow type, in each dialect.
fn sql_type(engine: Engine, dt: &DataType) -> &'static str {
    let (string, bigint, timestamp) = match engine {
        Engine::Duckdb => ("VARCHAR", "BIGINT", "TIMESTAMPTZ"),
        Engine::Spark | Engine::Maxcompute => ("STRING", "BIGINT", "TIMESTAMP"),
        Engine::Athena => ("string", "bigint", "timestamp"),
        Engine::Trino => ("varchar", "bigint", "timestamp(3)"),
        Engine::Starrocks => ("STRING", "BIGINT", "DATETIME"),
    };
    match dt {
        DataType::Utf8 => string,
        DataType::Int64 => bigint,
        DataType::Timestamp(..) => timestamp,
        other => unreachable!("no column of type {other} in the Parquet schema"),
    }
}

/// The columns of a table's files, one per line.
fn columns(engine: Engine, table: Table) -> String {
    let schema = crate::sink::parquet::schema(table);
    let cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("    {} {}", f.name(), sql_type(engine, f.data_type())))
        .collect();
    cols.join(",\n")
}

fn duckdb(t: &Target<'_>, table: Table, location: &str) -> String {
    format!(
        "CREATE OR REPLACE VIEW {} AS\nSELECT * FROM read_parquet({}, hive_partitioning = true, \
         union_by_name = true, hive_types = {{'dt': DATE}});\n",
        qualified(t, table),
        lit(&format!("{location}/*/*.parquet"))
    )
}

fn spark(t: &Target<'_>, table: Table, location: &str) -> String {
    let name = qualified(t, table);
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (\n{},\n    dt DATE\n)\nUSING parquet\n\
         OPTIONS (mergeSchema 'true')\nPARTITIONED BY (dt)\nLOCATION {};\n\
         ALTER TABLE {name} RECOVER PARTITIONS;\n",
        columns(Engine::Spark, table),
        lit(location)
    )
}

fn trino(t: &Target<'_>, table: Table, location: &str) -> String {
    let name = qualified(t, table);
    let (catalog, schema) = name
        .rsplit_once('.')
        .and_then(|(cs, _)| cs.split_once('.'))
        .unwrap_or(("hive", "ccc"));
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (\n{},\n    dt varchar\n)\nWITH (\n    \
         external_location = {},\n    format = 'PARQUET',\n    partitioned_by = ARRAY['dt']\n);\n\
         CALL {catalog}.system.sync_partition_metadata('{schema}', '{}', 'FULL');\n",
        columns(Engine::Trino, table),
        lit(location),
        table.name()
    )
}

fn starrocks(t: &Target<'_>, table: Table, location: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS {} (\n{}\n)\nENGINE = file\n\
         COMMENT \"dt is not a column here: it is the local day of stats_time\"\nPROPERTIES (\n    \
         \"path\" = \"{}/\",\n    \"format\" = \"parquet\",\n    \
         \"enable_recursive_listing\" = \"true\"\n);\n",
        qualified(t, table),
        columns(Engine::Starrocks, table),
        location.replace('\\', "\\\\").replace('"', "\\\""),
    )
}

fn athena(t: &Target<'_>, table: Table, location: &str) -> String {
    format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS {} (\n{}\n)\nPARTITIONED BY (dt string)\n\
         STORED AS PARQUET\nLOCATION {}\nTBLPROPERTIES (\n    'projection.enabled' = 'true',\n    \
         'projection.dt.type' = 'date',\n    'projection.dt.format' = 'yyyy-MM-dd',\n    \
         'projection.dt.range' = '2020-07-01,NOW',\n    'projection.dt.interval' = '1',\n    \
         'projection.dt.interval.unit' = 'DAYS',\n    'storage.location.template' = {}\n);\n",
        qualified(t, table),
        columns(Engine::Athena, table),
        lit(location),
        lit(&format!("{location}dt=${{dt}}/"))
    )
}

fn maxcompute(t: &Target<'_>, table: Table, location: &str) -> String {
    let name = qualified(t, table);
    format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS {name} (\n{}\n)\nPARTITIONED BY (dt STRING)\n\
         STORED AS PARQUET\nLOCATION {};\nMSCK REPAIR TABLE {name} ADD PARTITIONS;\n",
        columns(Engine::Maxcompute, table),
        lit(location)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_parquet_root;

    fn target(root: &RootUrl) -> Target<'_> {
        Target {
            root,
            schema: None,
            region: Some("cn-hangzhou"),
            azure_account: None,
        }
    }

    #[test]
    fn every_table_has_every_column_of_its_files_and_the_extra_column() {
        let root = parse_parquet_root("s3://lake/ccc").unwrap();
        for engine in [Engine::Spark, Engine::Trino, Engine::Athena] {
            let t = with_default_schema(engine, target(&root));
            let ddl = render(engine, &t).unwrap();
            for table in Table::ALL {
                for c in table.count_columns() {
                    assert!(ddl.contains(&format!("    {c} ")), "{engine:?} {c}");
                }
            }
            assert_eq!(ddl.matches("    extra ").count(), 3, "{engine:?}");
        }
    }

    #[test]
    fn engines_refuse_roots_they_cannot_read_saying_why() {
        let local = RootUrl::Local("/srv/wh".into());
        let err = render(Engine::Athena, &target(&local)).unwrap_err();
        assert!(err.contains("local directory"), "{err}");
        let oss = parse_parquet_root("oss://lake/ccc").unwrap();
        let err = render(Engine::Athena, &target(&oss)).unwrap_err();
        assert!(err.contains("Amazon S3 (s3://) only"), "{err}");
        let s3 = parse_parquet_root("s3://lake/ccc").unwrap();
        let err = render(Engine::Maxcompute, &target(&s3)).unwrap_err();
        assert!(err.contains("OSS (oss://) only"), "{err}");
        let az = parse_parquet_root("az://lake/ccc").unwrap();
        let err = render(Engine::Spark, &target(&az)).unwrap_err();
        assert!(err.contains("AZURE_STORAGE_ACCOUNT_NAME"), "{err}");
        let t = Target {
            azure_account: Some("acct"),
            ..target(&az)
        };
        let ddl = render(Engine::Spark, &t).unwrap();
        assert!(
            ddl.contains("'abfss://lake@acct.dfs.core.windows.net/ccc/inbound_trend'"),
            "{ddl}"
        );
    }

    #[test]
    fn a_schema_is_an_identifier_and_quotes_in_paths_are_doubled() {
        let local = RootUrl::Local("/srv/it's/wh".into());
        for bad in ["ccc;drop", "1ccc", "a.b", ""] {
            let t = Target {
                schema: Some(bad),
                ..target(&local)
            };
            assert!(render(Engine::Spark, &t).is_err(), "{bad}");
        }
        let t = Target {
            schema: Some("hive.ccc"),
            ..target(&local)
        };
        assert!(render(Engine::Spark, &t).is_err());
        let ddl = render(Engine::Duckdb, &target(&local)).unwrap();
        assert!(
            ddl.contains("'/srv/it''s/wh/inbound_trend/*/*.parquet'"),
            "{ddl}"
        );
    }
}
