// grpc-js (inside the etcd3 client) sets the TLS server name to the etcd IP,
// which Node reports as DEP0123 on every run. It is harmless for us — the
// certificate is checked against the IP in its subjectAltName — and a user
// should not see it, so only that warning is dropped.
const originalEmitWarning = process.emitWarning.bind(process);

process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
  const code = typeof rest[0] === 'object' && rest[0] !== null ? (rest[0] as { code?: string }).code : rest[1];
  if (code === 'DEP0123') return;
  (originalEmitWarning as (w: string | Error, ...r: unknown[]) => void)(warning, ...rest);
}) as typeof process.emitWarning;
