# simian %pre: the system user and group the service runs as.
getent group simian >/dev/null || groupadd --system simian
getent passwd simian >/dev/null || useradd --system --gid simian --no-create-home \
	--home-dir /nonexistent --shell /sbin/nologin --comment "simian reverse proxy" simian
exit 0
