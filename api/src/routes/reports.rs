//! CSV reports (R-DATA-3, R-DATA-4): contract details (`GET /v1/documents.csv`), the operation
//! log (`GET /v1/audit-log.csv`), the send-count statement (`GET /v1/usage.csv`) and the API
//! keys (`GET /v1/accounts.csv`). The CSV itself is written only by `shomei_jobs::reports`
//! (RFC 4180, UTF-8 with a byte-order mark unless `?encoding=utf-8`).
//!
//! A report is streamed: the first page is read before answering (so a database that is down
//! answers a 503 problem, not a 200 cut short), the rest one page per query (keyset, never
//! OFFSET) as the client reads, so memory stays flat whatever the tenant's size. A query that
//! fails mid-way aborts the response instead of ending a CSV that looks complete.
//!
//! Retention: events are never deleted, so the operation log reaches back at least one year
//! and statements two years; statements are refused beyond 24 months so that a later cleanup
//! of events older than two years changes no answer.
//!
//! A report must never show another tenant's rows, nor key hashes or secrets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Months, NaiveDate, NaiveTime, Utc};
use futures::StreamExt;
use shomei_jobs::calendar::{tokyo_month_of, tokyo_month_span};
use uuid::Uuid;
use warp::http::header;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_jobs::events::kind;
use shomei_jobs::reports::{self, document_record, Encoding, DOCUMENT_COLUMNS};
use shomei_schema::{interact, ApiKey, DocumentFilter, Event};

use super::{respond, with_state};
use crate::auth::{authorized, Caller, Permission};
use crate::problem::ApiError;
use crate::AppState;

/// Rows per query.
const PAGE: i64 = 500;

const AUDIT_COLUMNS: [&str; 7] = [
    "time",
    "actor",
    "ip",
    "action",
    "document_id",
    "request_id",
    "details",
];
/// The longest span of one operation-log file.
const AUDIT_MAX_MONTHS: u32 = 3;

const USAGE_COLUMNS: [&str; 4] = ["month", "requests_sent", "invitations_sent", "signatures"];
/// Months a statement covers without `month`, and the oldest month one may ask for (this one
/// and the 23 before it).
const USAGE_MONTHS: u32 = 24;

const ACCOUNT_COLUMNS: [&str; 7] = [
    "key_id",
    "prefix",
    "name",
    "role",
    "status",
    "created_at",
    "revoked_at",
];

type Query = Vec<(String, String)>;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let documents = warp::path!("v1" / "documents.csv")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state.clone()))
        .and(warp::query::<Query>())
        .then(documents)
        .map(respond);
    let audit_log = warp::path!("v1" / "audit-log.csv")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadAuditLog))
        .and(with_state(state.clone()))
        .and(warp::query::<Query>())
        .then(audit_log)
        .map(respond);
    let usage = warp::path!("v1" / "usage.csv")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadAuditLog))
        .and(with_state(state.clone()))
        .and(warp::query::<Query>())
        .then(usage)
        .map(respond);
    let accounts = warp::path!("v1" / "accounts.csv")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadAuditLog))
        .and(with_state(state))
        .and(warp::query::<Query>())
        .then(accounts)
        .map(respond);
    documents
        .or(audit_log)
        .unify()
        .or(usage)
        .unify()
        .or(accounts)
        .unify()
}

/// Contract details: one row per document matching the filter, in upload order.
async fn documents(
    caller: Caller,
    state: Arc<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let params = Params::check(
        query,
        &[
            "status",
            "signed_from",
            "signed_to",
            "title_contains",
            "folder",
            "ids",
            "encoding",
        ],
    )?;
    let encoding = params.encoding()?;
    let instant = |name| params.get(name).map(|v| parse_instant(name, v)).transpose();
    let filter = DocumentFilter {
        ids: params.get("ids").map(parse_ids).transpose()?,
        status: params.get("status").map(str::to_owned),
        signed_from: instant("signed_from")?,
        signed_to: instant("signed_to")?,
        title_contains: params.get("title_contains").map(str::to_owned),
        folder: params.get("folder").map(str::to_owned),
    };
    filter.check().map_err(ApiError::BadRequest)?;
    if let Some(ids) = filter.ids.clone() {
        let foreign = interact(&state.db, move |conn| {
            Ok(DocumentFilter::foreign_ids(
                conn,
                caller.tenant_id,
                caller.principal(),
                &ids,
            )?)
        })
        .await?;
        if !foreign.is_empty() {
            // The same answer for another tenant's ids as for ids that do not exist.
            return Err(ApiError::NotFound("document"));
        }
    }

    let fetch = move |after: Option<Uuid>| -> PageFuture<Uuid> {
        let (db, keys, filter) = (state.db.clone(), state.keys.clone(), filter.clone());
        Box::pin(async move {
            let rows = interact(&db, move |conn| {
                Ok(filter.page(
                    conn,
                    caller.tenant_id,
                    Some(caller.principal()),
                    false,
                    after,
                    PAGE,
                )?)
            })
            .await?;
            let next = full(&rows).and_then(|rows| rows.last()).map(|row| row.id);
            let mut records = Vec::with_capacity(rows.len());
            for row in &rows {
                records.push(document_record(row, reports::parties(&keys, row).await?));
            }
            Ok(CsvPage {
                csv: reports::rows(records),
                next,
            })
        })
    };
    csv_download("documents.csv".into(), encoding, &DOCUMENT_COLUMNS, fetch).await
}

/// The operation log: the tenant's events in `[from, to)`, oldest first.
async fn audit_log(
    caller: Caller,
    state: Arc<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let params = Params::check(query, &["from", "to", "encoding"])?;
    let encoding = params.encoding()?;
    let required = |name| {
        let value = params.get(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{name} is required: an RFC 3339 time or a date (YYYY-MM-DD, midnight UTC)"
            ))
        })?;
        parse_instant(name, value)
    };
    let (from, to) = (required("from")?, required("to")?);
    check_span(from, to)?;

    let fetch = move |after: Option<(DateTime<Utc>, Uuid)>| -> PageFuture<(DateTime<Utc>, Uuid)> {
        let db = state.db.clone();
        Box::pin(async move {
            let events = interact(&db, move |conn| {
                Ok(Event::page(conn, caller.tenant_id, from, to, after, PAGE)?)
            })
            .await?;
            let next = full(&events)
                .and_then(|events| events.last())
                .map(|e| (e.created_at, e.id));
            Ok(CsvPage {
                csv: reports::rows(events.iter().map(audit_record)),
                next,
            })
        })
    };
    let filename = format!(
        "audit-log-{}_{}.csv",
        from.format("%Y-%m-%d"),
        to.format("%Y-%m-%d")
    );
    csv_download(filename, encoding, &AUDIT_COLUMNS, fetch).await
}

fn audit_record(event: &Event) -> Vec<String> {
    let id = |id: Option<Uuid>| id.map(|id| id.to_string()).unwrap_or_default();
    vec![
        reports::time(event.created_at),
        event.actor.clone(),
        event.ip.clone().unwrap_or_default(),
        event.kind.clone(),
        id(event.document_id),
        id(event.request_id),
        event.data.to_string(),
    ]
}

/// `to` after `from`, and at most [`AUDIT_MAX_MONTHS`] calendar months after it.
fn check_span(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<(), ApiError> {
    if to <= from {
        return Err(ApiError::BadRequest("to must be after from".into()));
    }
    let limit = from.checked_add_months(Months::new(AUDIT_MAX_MONTHS));
    if limit.is_some_and(|limit| to > limit) {
        return Err(ApiError::BadRequest(format!(
            "from {} to {} is too long a span: at most {AUDIT_MAX_MONTHS} months per file; \
             ask for the rest in further files",
            reports::time(from),
            reports::time(to)
        )));
    }
    Ok(())
}

/// The send-count statement: one month (`?month=YYYY-MM`) or the last 24, newest first.
async fn usage(caller: Caller, state: Arc<AppState>, query: Query) -> Result<Response, ApiError> {
    let params = Params::check(query, &["month", "encoding"])?;
    let encoding = params.encoding()?;
    let current = tokyo_month_of(Utc::now());
    let oldest = current
        .checked_sub_months(Months::new(USAGE_MONTHS - 1))
        .expect("24 months before now is a valid date");
    let (months, filename) = match params.get("month") {
        Some(value) => {
            let month = parse_month(value)?;
            if month < oldest {
                return Err(ApiError::Unprocessable(format!(
                    "statements are kept for 2 years; the oldest month available is {}",
                    oldest.format("%Y-%m")
                )));
            }
            if month > current {
                return Err(ApiError::Unprocessable(format!(
                    "month {value} has not begun (the current month is {})",
                    current.format("%Y-%m")
                )));
            }
            (vec![month], format!("usage-{value}.csv"))
        }
        None => {
            let months = (0..USAGE_MONTHS)
                .filter_map(|n| current.checked_sub_months(Months::new(n)))
                .collect();
            (months, "usage.csv".to_owned())
        }
    };

    // At most 24 rows: one page.
    let fetch = move |_: Option<()>| -> PageFuture<()> {
        let (db, months) = (state.db.clone(), months.clone());
        Box::pin(async move {
            let records = interact(&db, move |conn| {
                let kinds = [
                    kind::REQUEST_CREATED,
                    kind::REQUEST_SENT,
                    kind::DOCUMENT_SIGNED,
                ];
                let mut records = Vec::with_capacity(months.len());
                for month in months {
                    let (start, end) = tokyo_month_span(month);
                    let counts = Event::count_by_kind(conn, caller.tenant_id, &kinds, start, end)?;
                    let count = |kind: &str| {
                        counts
                            .iter()
                            .find(|(k, _)| k == kind)
                            .map_or(0, |(_, n)| *n)
                            .to_string()
                    };
                    records.push(vec![
                        month.format("%Y-%m").to_string(),
                        count(kinds[0]),
                        count(kinds[1]),
                        count(kinds[2]),
                    ]);
                }
                Ok(records)
            })
            .await?;
            Ok(CsvPage {
                csv: reports::rows(records),
                next: None,
            })
        })
    };
    csv_download(filename, encoding, &USAGE_COLUMNS, fetch).await
}

/// `YYYY-MM` as the first day of that month.
fn parse_month(value: &str) -> Result<NaiveDate, ApiError> {
    let shaped = value.len() == 7
        && value.bytes().enumerate().all(|(i, b)| {
            if i == 4 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    shaped
        .then(|| NaiveDate::from_ymd_opt(value[..4].parse().ok()?, value[5..].parse().ok()?, 1))
        .flatten()
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "month must be YYYY-MM (e.g. 2026-04), not {value:?}"
            ))
        })
}

/// The tenant's API keys, revoked ones too, oldest first; never their hashes.
async fn accounts(
    caller: Caller,
    state: Arc<AppState>,
    query: Query,
) -> Result<Response, ApiError> {
    let params = Params::check(query, &["encoding"])?;
    let encoding = params.encoding()?;
    // A tenant has a handful of keys: one page.
    let fetch = move |_: Option<()>| -> PageFuture<()> {
        let db = state.db.clone();
        Box::pin(async move {
            let keys = interact(&db, move |conn| Ok(ApiKey::list(conn, caller.tenant_id)?)).await?;
            Ok(CsvPage {
                csv: reports::rows(keys.iter().map(account_record)),
                next: None,
            })
        })
    };
    csv_download("accounts.csv".into(), encoding, &ACCOUNT_COLUMNS, fetch).await
}

fn account_record(key: &ApiKey) -> Vec<String> {
    let status = if key.revoked_at.is_some() {
        "revoked"
    } else {
        "active"
    };
    vec![
        key.id.to_string(),
        key.prefix.clone(),
        key.name.clone().unwrap_or_default(),
        key.role.clone(),
        status.to_owned(),
        reports::time(key.created_at),
        key.revoked_at.map(reports::time).unwrap_or_default(),
    ]
}

/// A report's query string: each parameter at most once and only those the report knows, so
/// that a misspelt filter is refused instead of silently selecting everything.
struct Params(Query);

impl Params {
    fn check(query: Query, known: &[&str]) -> Result<Params, ApiError> {
        for (i, (name, _)) in query.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {name:?}; this report takes {}",
                    known.join(", ")
                )));
            }
            if query[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {name:?} is given more than once"
                )));
            }
        }
        Ok(Params(query))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    fn encoding(&self) -> Result<Encoding, ApiError> {
        self.get("encoding")
            .map(str::parse)
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(ApiError::BadRequest)
    }
}

/// An instant in a query: RFC 3339, or a date `YYYY-MM-DD` meaning its midnight UTC.
fn parse_instant(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let rfc3339 = |v: &str| DateTime::parse_from_rfc3339(v).ok();
    // A `+` left unencoded in a query string arrives as a space (`...T09:00:00 09:00`).
    let unencoded_plus = || {
        let (time, offset) = value.rsplit_once(' ')?;
        rfc3339(&format!("{time}+{offset}"))
    };
    if let Some(t) = rfc3339(value).or_else(unencoded_plus) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(day) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(day.and_time(NaiveTime::MIN).and_utc());
    }
    Err(ApiError::BadRequest(format!(
        "{name} must be an RFC 3339 time (2026-04-01T00:00:00+09:00) or a date \
         (2026-04-01, midnight UTC), not {value:?}"
    )))
}

/// `ids=a,b,c` as document ids.
fn parse_ids(value: &str) -> Result<Vec<Uuid>, ApiError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(|id| {
            id.parse().map_err(|_| {
                ApiError::BadRequest(format!("ids: {id:?} is not a document id (a UUID)"))
            })
        })
        .collect()
}

/// `rows` when the query filled its page, so a next one may follow.
fn full<T>(rows: &[T]) -> Option<&[T]> {
    (rows.len() as i64 >= PAGE).then_some(rows)
}

/// One page of a report: its CSV lines and the key after which the next page starts (`None`:
/// this was the last).
struct CsvPage<K> {
    csv: Vec<u8>,
    next: Option<K>,
}

type PageFuture<K> = Pin<Box<dyn Future<Output = Result<CsvPage<K>, ApiError>> + Send>>;

/// A streamed CSV download. `fetch(None)` reads the first page, `fetch(Some(key))` the page
/// after `key`; each is asked for only when the client has taken what came before (through
/// [`super::body_stream`]'s small channel).
async fn csv_download<K, F>(
    filename: String,
    encoding: Encoding,
    columns: &[&str],
    mut fetch: F,
) -> Result<Response, ApiError>
where
    K: Send + 'static,
    F: FnMut(Option<K>) -> PageFuture<K> + Send + 'static,
{
    let first = fetch(None).await?;
    let mut head = reports::start(columns, encoding);
    head.extend(first.csv);
    let rest = futures::stream::unfold((first.next, fetch), |(mut next, mut fetch)| async move {
        // Skips empty pages: an empty chunk would mean nothing, and none is sent.
        while let Some(after) = next.take() {
            match fetch(Some(after)).await {
                Ok(page) if page.csv.is_empty() => next = page.next,
                Ok(page) => return Some((Ok(Bytes::from(page.csv)), (page.next, fetch))),
                Err(e) => {
                    // Logged here, once; the client sees the response cut off, never a CSV
                    // that looks complete.
                    tracing::error!(error = ?e, "CSV report cut off: a page could not be read");
                    let cut = std::io::Error::other("a page of the report could not be read");
                    return Some((Err(cut), (None, fetch)));
                }
            }
        }
        None
    });
    let body = futures::stream::once(std::future::ready(Ok(Bytes::from(head)))).chain(rest);
    let mut response = warp::reply::stream(super::body_stream(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    let disposition = format!("attachment; filename=\"{filename}\"");
    headers.insert(
        header::CONTENT_DISPOSITION,
        disposition.parse().map_err(anyhow::Error::from)?,
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn instants_are_rfc3339_or_dates_at_midnight_utc() {
        assert_eq!(
            parse_instant("from", "2026-04-01T09:00:00+09:00").unwrap(),
            utc("2026-04-01T00:00:00Z")
        );
        assert_eq!(
            parse_instant("from", "2026-04-01T09:00:00 09:00").unwrap(),
            utc("2026-04-01T00:00:00Z")
        );
        assert_eq!(
            parse_instant("from", "2026-04-01").unwrap(),
            utc("2026-04-01T00:00:00Z")
        );
        assert!(parse_instant("from", "yesterday").is_err());
    }

    #[test]
    fn a_span_may_reach_three_calendar_months_and_no_further() {
        let from = utc("2026-01-31T00:00:00Z");
        assert!(check_span(from, utc("2026-04-30T00:00:00Z")).is_ok());
        let err = check_span(from, utc("2026-04-30T00:00:01Z")).unwrap_err();
        assert!(
            err.to_string().contains("at most 3 months per file"),
            "{err}"
        );
        assert!(check_span(from, from).is_err());
    }

    #[test]
    fn months_are_counted_in_tokyo() {
        let (start, end) = tokyo_month_span(parse_month("2026-04").unwrap());
        assert_eq!(start, utc("2026-03-31T15:00:00Z"));
        assert_eq!(end, utc("2026-04-30T15:00:00Z"));
        assert_eq!(
            tokyo_month_of(utc("2026-03-31T15:00:00Z")),
            NaiveDate::from_ymd_opt(2026, 4, 1).unwrap()
        );
        for bad in ["2026-4", "2026-13", "26-04", "2026/04", "2026-04-01"] {
            assert!(parse_month(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        let q = |pairs: &[(&str, &str)]| -> Query {
            pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(Params::check(q(&[("stauts", "signed")]), &["status"]).is_err());
        assert!(Params::check(q(&[("status", "a"), ("status", "b")]), &["status"]).is_err());
        let params = Params::check(q(&[("encoding", "utf-8")]), &["encoding"]).unwrap();
        assert_eq!(params.encoding().unwrap(), Encoding::Utf8);
    }
}
