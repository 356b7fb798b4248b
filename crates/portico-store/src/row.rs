//! Decoding helpers: a column that does not parse is a `Corrupt` error naming its table.

use crate::{Error, Result};
use sqlx::Row;
use sqlx::any::AnyRow;
use std::str::FromStr;

pub(crate) fn get<T>(row: &AnyRow, table: &'static str, col: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(col).map_err(|e| Error::Corrupt { table, message: format!("{col}: {e}") })
}

pub(crate) fn parse<T>(row: &AnyRow, table: &'static str, col: &str) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let s: String = get(row, table, col)?;
    s.parse().map_err(|e: T::Err| Error::Corrupt { table, message: format!("{col}: {e}") })
}

pub(crate) fn with<T, E: std::fmt::Display>(
    row: &AnyRow,
    table: &'static str,
    col: &str,
    f: impl FnOnce(&str) -> std::result::Result<T, E>,
) -> Result<T> {
    let s: String = get(row, table, col)?;
    f(&s).map_err(|e| Error::Corrupt { table, message: format!("{col}: {e}") })
}

pub(crate) fn time(row: &AnyRow, table: &'static str, col: &str) -> Result<time::OffsetDateTime> {
    Ok(crate::from_millis(get::<i64>(row, table, col)?))
}

pub(crate) fn opt_time(row: &AnyRow, table: &'static str, col: &str) -> Result<Option<time::OffsetDateTime>> {
    Ok(get::<Option<i64>>(row, table, col)?.map(crate::from_millis))
}
