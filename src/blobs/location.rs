//! Where blobs live: `--blob-url` (`LATHE_BLOB_URL`), parsed once with the
//! rest of the configuration, so a URL that does not parse stops start-up
//! with clap's message naming the setting.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A blob store the operator named. Without one, blobs live in the data
/// directory's `blobs/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobUrl {
    /// `file:///abs/path`: a local (or mounted) directory.
    Dir(PathBuf),
    /// `s3://bucket[/prefix]`: an S3-compatible bucket, configured by the
    /// standard `AWS_*` environment variables (endpoint, credentials,
    /// region, `AWS_ALLOW_HTTP`).
    S3 { bucket: String, prefix: String },
}

impl FromStr for BlobUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err("a file:// URL needs an absolute path: file:///srv/lathe/blobs".into());
            }
            return Ok(BlobUrl::Dir(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_bucket(bucket)?;
            let prefix = prefix.trim_matches('/');
            if !prefix.is_empty()
                && prefix
                    .split('/')
                    .any(|part| part.is_empty() || part == "." || part == "..")
            {
                return Err(format!("the prefix {prefix:?} has an empty, '.' or '..' part"));
            }
            return Ok(BlobUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        Err("expected file:///absolute/path or s3://bucket[/prefix]".into())
    }
}

/// S3's bucket naming rules, enough to catch a missing or mistyped name
/// before any request is made.
fn check_bucket(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("the bucket is missing: s3://bucket[/prefix]".into());
    }
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
        ))
    }
}

impl fmt::Display for BlobUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobUrl::Dir(path) => write!(f, "file://{}", path.display()),
            BlobUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            BlobUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directories_and_buckets_and_names_what_is_wrong() {
        assert_eq!(
            "file:///srv/blobs".parse::<BlobUrl>(),
            Ok(BlobUrl::Dir("/srv/blobs".into()))
        );
        assert_eq!(
            "s3://my-bucket".parse::<BlobUrl>(),
            Ok(BlobUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: String::new()
            })
        );
        let url: BlobUrl = "s3://my-bucket/lathe/prod/".parse().unwrap();
        assert_eq!(
            url,
            BlobUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "lathe/prod".into()
            }
        );
        assert_eq!(url.to_string(), "s3://my-bucket/lathe/prod");
        for (bad, says) in [
            ("s3://", "bucket is missing"),
            ("s3:///prefix", "bucket is missing"),
            ("s3://Bad_Bucket", "not a bucket name"),
            ("s3://ok-bucket/a//b", "empty"),
            ("s3://ok-bucket/a/../b", "'..'"),
            ("file://relative/path", "absolute path"),
            ("/srv/blobs", "expected file:///"),
            ("gs://bucket", "expected file:///"),
        ] {
            let err = bad.parse::<BlobUrl>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
