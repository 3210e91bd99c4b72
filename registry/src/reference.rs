//! Image references: `[registry/]repository[:tag][@digest]`.

use crate::digest::Digest;
use std::fmt;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// The reference does not follow the `registry/repository:tag` grammar.
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Default registry for references without a host part.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host[:port], e.g. `127.0.0.1:5000` or `docker.io`.
    pub registry: String,
    /// Repository path, e.g. `library/alpine`.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest, if any (wins over the tag when both are given).
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parse a reference. A first component with a `.` or `:`, or `localhost`, is a
    /// registry host; otherwise Docker Hub is assumed (with `library/` for one-part names).
    /// A missing tag and digest means `latest`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let bad = |reason| ReferenceError::Invalid {
            reference: s.to_string(),
            reason,
        };
        if s.is_empty() || s.len() > 512 {
            return Err(bad("empty or too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|_| bad("bad digest"))?)),
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, p))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), p.to_string())
            }
            _ => (DOCKER_HUB.to_string(), rest.to_string()),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), Some(t.to_string())),
            _ => (path, None),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || !repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return Err(bad(
                "repository must be lowercase [a-z0-9._-] path components",
            ));
        }
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(bad("tag must be [A-Za-z0-9._-]{1,128}"));
            }
        }
        if registry.is_empty() || registry.contains(char::is_whitespace) {
            return Err(bad("bad registry host"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What to ask the registry for: the digest if known, else the tag.
    pub fn object(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The same repository, pinned to `digest`.
    pub fn with_digest(&self, digest: &Digest) -> Self {
        Self {
            digest: Some(digest.clone()),
            tag: None,
            ..self.clone()
        }
    }

    /// The host to contact: Docker Hub's API lives on `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let r = Reference::parse("127.0.0.1:5000/berth/os:stable").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "berth/os");
        assert_eq!(r.tag.as_deref(), Some("stable"));
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/alpine");
        assert_eq!(r.object(), "latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r = Reference::parse(&format!("localhost/x@{d}")).unwrap();
        assert_eq!(r.object(), d);
        assert_eq!(r.to_string(), format!("localhost/x@{d}"));
        assert!(Reference::parse("Host:1/UPPER").is_err());
        assert!(Reference::parse("h.io/x:t@sha256:zz").is_err());
        assert!(Reference::parse("").is_err());
    }
}
