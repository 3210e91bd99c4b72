//! OCI registry client, content-addressed store and layer unpacker (work in progress).
