//! SQL against the deployment's database that may fail (PostgreSQL is down for a while), one
//! connection per query: the suite reads little and must not hold connections across a restart.

use diesel::{Connection, PgConnection, RunQueryDsl};

fn connect(db: &str) -> Result<PgConnection, String> {
    PgConnection::establish(db).map_err(|e| e.to_string())
}

pub fn count(db: &str, sql: &str) -> Result<i64, String> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<Count>(&mut connect(db)?)
        .map(|c| c.n)
        .map_err(|e| e.to_string())
}

pub fn texts(db: &str, sql: &str) -> Result<Vec<String>, String> {
    #[derive(diesel::QueryableByName)]
    struct Text {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    diesel::sql_query(sql)
        .load::<Text>(&mut connect(db)?)
        .map(|rows| rows.into_iter().map(|r| r.t).collect())
        .map_err(|e| e.to_string())
}

pub fn floats(db: &str, sql: &str) -> Result<Vec<f64>, String> {
    #[derive(diesel::QueryableByName)]
    struct Float {
        #[diesel(sql_type = diesel::sql_types::Double)]
        v: f64,
    }
    diesel::sql_query(sql)
        .load::<Float>(&mut connect(db)?)
        .map(|rows| rows.into_iter().map(|r| r.v).collect())
        .map_err(|e| e.to_string())
}

pub fn float(db: &str, sql: &str) -> Result<Option<f64>, String> {
    #[derive(diesel::QueryableByName)]
    struct Float {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
        v: Option<f64>,
    }
    diesel::sql_query(sql)
        .get_result::<Float>(&mut connect(db)?)
        .map(|f| f.v)
        .map_err(|e| e.to_string())
}
