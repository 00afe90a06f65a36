// fsext: the few Linux file and socket calls that Node.js does not expose.
//
//   punchHole(fd, offset, length)  -> Promise<void>   fallocate(PUNCH_HOLE|KEEP_SIZE)
//   zeroRange(fd, offset, length)  -> Promise<void>   fallocate(ZERO_RANGE|KEEP_SIZE)
//   allocate(fd, offset, length)   -> Promise<void>   fallocate(0): reserve blocks
//   seekData(fd, offset)           -> number          lseek(SEEK_DATA), -1 on ENXIO
//   seekHole(fd, offset)           -> number          lseek(SEEK_HOLE), -1 on ENXIO
//   writePieces(fd, buf, offset, piece) -> Promise<void> pwrite all of buf, `piece` bytes per call
//   setRecvLowWater(fd, bytes)     -> void            setsockopt(SO_RCVLOWAT)
//
// fallocate can take long (allocating a large thick file, punching a heavily
// fragmented range), so it runs on the libuv threadpool as napi_async_work.
// The seeks only consult the extent tree and stay synchronous. writePieces
// exists because the kernel sizes page-cache folios by the write that creates
// them (see WRITE_PIECE in src/replica/replica.ts): a large write is cut into
// pieces, all in one threadpool job instead of one round trip per piece.
// Errors are JS Errors with `code` set to the errno name (e.g. 'ENOSPC'),
// `errno` set to the negated errno (as Node's fs errors do) and `syscall`.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

// Largest integer a JS number holds exactly: offsets beyond it cannot be
// expressed by the caller anyway.
#define MAX_SAFE_INTEGER 9007199254740991.0

#define NAPI_CALL(env, call)                                     \
  do {                                                           \
    if ((call) != napi_ok) {                                     \
      napi_throw_error((env), "EFSEXT", "N-API call failed: " #call); \
      return NULL;                                               \
    }                                                            \
  } while (0)

static const char* errno_name(int e) {
  switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case ENODEV: return "ENODEV";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ETXTBSY: return "ETXTBSY";
    case EFBIG: return "EFBIG";
    case ENOSPC: return "ENOSPC";
    case ESPIPE: return "ESPIPE";
    case EROFS: return "EROFS";
    case ENOSYS: return "ENOSYS";
    case ENOTSOCK: return "ENOTSOCK";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case EOVERFLOW: return "EOVERFLOW";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EDQUOT: return "EDQUOT";
    default: return "EUNKNOWN";
  }
}

static napi_value make_errno_error(napi_env env, int err, const char* syscall) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s, %s", errno_name(err), strerror(err), syscall);
  napi_value code, msg, error, errno_value, syscall_value;
  if (napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code) != napi_ok) return NULL;
  if (napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg) != napi_ok) return NULL;
  if (napi_create_error(env, code, msg, &error) != napi_ok) return NULL;
  if (napi_create_int32(env, -err, &errno_value) == napi_ok)
    napi_set_named_property(env, error, "errno", errno_value);
  if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value) == napi_ok)
    napi_set_named_property(env, error, "syscall", syscall_value);
  return error;
}

static void throw_errno(napi_env env, int err, const char* syscall) {
  napi_value error = make_errno_error(env, err, syscall);
  if (error != NULL) napi_throw(env, error);
  else napi_throw_error(env, errno_name(err), strerror(err));
}

// Reads argument `index` as a file descriptor. Throws and returns 0 on failure.
static int get_fd(napi_env env, napi_value value, int* fd) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "fd must be a number");
    return 0;
  }
  double d;
  napi_get_value_double(env, value, &d);
  if (!(d >= 0 && d <= 2147483647.0) || d != (double)(int32_t)d) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fd must be a non-negative int32");
    return 0;
  }
  *fd = (int)d;
  return 1;
}

// Reads a non-negative safe integer (offset or length). Throws and returns 0 on failure.
static int get_off(napi_env env, napi_value value, const char* what, int64_t* out) {
  napi_valuetype type;
  char message[96];
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number) {
    snprintf(message, sizeof message, "%s must be a number", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
    return 0;
  }
  double d;
  napi_get_value_double(env, value, &d);
  if (!(d >= 0 && d <= MAX_SAFE_INTEGER) || d != (double)(int64_t)d) {
    snprintf(message, sizeof message, "%s must be a non-negative safe integer", what);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", message);
    return 0;
  }
  *out = (int64_t)d;
  return 1;
}

// Reads exactly `count` arguments into argv. Throws (ERR_MISSING_ARGS with
// `usage`) and returns 0 if fewer were passed.
static int get_args(napi_env env, napi_callback_info info, size_t count, napi_value* argv, const char* usage) {
  size_t argc = count;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    napi_throw_error(env, "EFSEXT", "N-API call failed: napi_get_cb_info");
    return 0;
  }
  if (argc < count) {
    napi_throw_type_error(env, "ERR_MISSING_ARGS", usage);
    return 0;
  }
  return 1;
}

// Creates the promise and queues `execute` on the threadpool; `complete`
// settles it (see settle_job). Returns NULL, with a JS error thrown and
// nothing left queued, if that fails; the caller then frees its request.
static napi_value queue_job(napi_env env, const char* name, napi_async_execute_callback execute,
                           napi_async_complete_callback complete, void* req, napi_deferred* deferred,
                           napi_async_work* work) {
  napi_value promise, resource_name;
  if (napi_create_promise(env, deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name) != napi_ok ||
      napi_create_async_work(env, NULL, resource_name, execute, complete, req, work) != napi_ok) {
    napi_throw_error(env, "EFSEXT", "could not create async work");
    return NULL;
  }
  if (napi_queue_async_work(env, *work) != napi_ok) {
    napi_delete_async_work(env, *work);
    napi_throw_error(env, "EFSEXT", "could not queue async work");
    return NULL;
  }
  return promise;
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  int fd;
  int mode;
  int64_t offset;
  int64_t length;
  int err;
} falloc_request;

static void falloc_execute(napi_env env, void* data) {
  (void)env;
  falloc_request* req = data;
  int rc;
  do {
    rc = fallocate(req->fd, req->mode, (off_t)req->offset, (off_t)req->length);
  } while (rc != 0 && errno == EINTR);
  req->err = rc == 0 ? 0 : errno;
}

// Settles the promise of a finished threadpool job: cancelled, failed with
// errno `err` in `syscall`, or done.
static void settle_job(napi_env env, napi_status status, napi_deferred deferred, int err, const char* syscall) {
  if (status != napi_ok) {
    napi_value code, msg, error;
    napi_create_string_utf8(env, "EFSEXT", NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, "threadpool work was cancelled", NAPI_AUTO_LENGTH, &msg);
    napi_create_error(env, code, msg, &error);
    napi_reject_deferred(env, deferred, error);
  } else if (err != 0) {
    napi_reject_deferred(env, deferred, make_errno_error(env, err, syscall));
  } else {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, deferred, undefined);
  }
}

static void falloc_complete(napi_env env, napi_status status, void* data) {
  falloc_request* req = data;
  settle_job(env, status, req->deferred, req->err, "fallocate");
  napi_delete_async_work(env, req->work);
  free(req);
}

static napi_value start_falloc(napi_env env, napi_callback_info info, int mode, const char* name) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv, "expected (fd, offset, length)")) return NULL;
  int fd;
  int64_t offset, length;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  if (!get_off(env, argv[1], "offset", &offset)) return NULL;
  if (!get_off(env, argv[2], "length", &length)) return NULL;

  falloc_request* req = calloc(1, sizeof *req);
  if (req == NULL) {
    throw_errno(env, ENOMEM, "fallocate");
    return NULL;
  }
  req->fd = fd;
  req->mode = mode;
  req->offset = offset;
  req->length = length;

  napi_value promise = queue_job(env, name, falloc_execute, falloc_complete, req, &req->deferred, &req->work);
  if (promise == NULL) free(req);
  return promise;
}

static napi_value punch_hole(napi_env env, napi_callback_info info) {
  return start_falloc(env, info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "fsext.punchHole");
}

static napi_value zero_range(napi_env env, napi_callback_info info) {
  return start_falloc(env, info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "fsext.zeroRange");
}

static napi_value allocate(napi_env env, napi_callback_info info) {
  return start_falloc(env, info, 0, "fsext.allocate");
}

// Reads the arguments (fd, <name>) where <name> is a non-negative safe
// integer. Throws and returns 0 on failure.
static int get_fd_and_number(napi_env env, napi_callback_info info, const char* name, int* fd, int64_t* value) {
  napi_value argv[2];
  char usage[64];
  snprintf(usage, sizeof usage, "expected (fd, %s)", name);
  if (!get_args(env, info, 2, argv, usage)) return 0;
  return get_fd(env, argv[0], fd) && get_off(env, argv[1], name, value);
}

static napi_value do_seek(napi_env env, napi_callback_info info, int whence, const char* syscall) {
  int fd;
  int64_t offset;
  if (!get_fd_and_number(env, info, "offset", &fd, &offset)) return NULL;
  off_t pos = lseek(fd, (off_t)offset, whence);
  if (pos < 0) {
    if (errno != ENXIO) {
      throw_errno(env, errno, syscall);
      return NULL;
    }
    pos = -1;  // offset is at or beyond EOF (or no data after it for SEEK_DATA)
  }
  napi_value result;
  NAPI_CALL(env, napi_create_double(env, (double)pos, &result));
  return result;
}

static napi_value seek_data(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)");
}

static napi_value seek_hole(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)");
}

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref buffer_ref;  // keeps the data alive while the job runs
  int fd;
  const char* data;
  size_t length;
  int64_t offset;
  size_t piece;
  int err;
} write_request;

static void write_execute(napi_env env, void* data) {
  (void)env;
  write_request* req = data;
  size_t done = 0;
  req->err = 0;
  while (done < req->length) {
    size_t want = req->length - done;
    if (want > req->piece) want = req->piece;
    ssize_t n = pwrite(req->fd, req->data + done, want, (off_t)(req->offset + (int64_t)done));
    if (n < 0) {
      if (errno == EINTR) continue;
      req->err = errno;
      return;
    }
    if (n == 0) {
      req->err = EIO;  // pwrite of a non-empty range wrote nothing
      return;
    }
    done += (size_t)n;
  }
}

static void write_complete(napi_env env, napi_status status, void* data) {
  write_request* req = data;
  settle_job(env, status, req->deferred, req->err, "pwrite");
  napi_delete_reference(env, req->buffer_ref);
  napi_delete_async_work(env, req->work);
  free(req);
}

static napi_value write_pieces(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv, "expected (fd, buffer, offset, piece)")) return NULL;
  int fd;
  int64_t offset, piece;
  bool is_typed_array = false;
  if (!get_fd(env, argv[0], &fd)) return NULL;
  NAPI_CALL(env, napi_is_typedarray(env, argv[1], &is_typed_array));
  if (!is_typed_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buffer must be a Uint8Array");
    return NULL;
  }
  napi_typedarray_type type;
  size_t length;
  void* bytes;
  NAPI_CALL(env, napi_get_typedarray_info(env, argv[1], &type, &length, &bytes, NULL, NULL));
  if (type != napi_uint8_array) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "buffer must be a Uint8Array");
    return NULL;
  }
  if (!get_off(env, argv[2], "offset", &offset)) return NULL;
  if (!get_off(env, argv[3], "piece", &piece)) return NULL;
  if (piece <= 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "piece must be positive");
    return NULL;
  }

  write_request* req = calloc(1, sizeof *req);
  if (req == NULL) {
    throw_errno(env, ENOMEM, "pwrite");
    return NULL;
  }
  req->fd = fd;
  req->data = bytes;
  req->length = length;
  req->offset = offset;
  req->piece = (size_t)piece;

  if (napi_create_reference(env, argv[1], 1, &req->buffer_ref) != napi_ok) {
    free(req);
    napi_throw_error(env, "EFSEXT", "could not reference the buffer");
    return NULL;
  }
  napi_value promise = queue_job(env, "fsext.writePieces", write_execute, write_complete, req, &req->deferred, &req->work);
  if (promise == NULL) {
    napi_delete_reference(env, req->buffer_ref);
    free(req);
  }
  return promise;
}

// SO_RCVLOWAT: a TCP socket wakes its reader only once this many bytes are
// queued. While a large message is being received, that saves a wake-up per
// segment (each one an inter-processor interrupt in a VM).
static napi_value set_recv_low_water(napi_env env, napi_callback_info info) {
  int fd;
  int64_t bytes;
  if (!get_fd_and_number(env, info, "bytes", &fd, &bytes)) return NULL;
  if (bytes < 1 || bytes > 2147483647) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "bytes must be between 1 and 2^31-1");
    return NULL;
  }
  int value = (int)bytes;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &value, sizeof value) != 0) {
    throw_errno(env, errno, "setsockopt(SO_RCVLOWAT)");
    return NULL;
  }
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"punchHole", NULL, punch_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"zeroRange", NULL, zero_range, NULL, NULL, NULL, napi_enumerable, NULL},
      {"allocate", NULL, allocate, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekData", NULL, seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"writePieces", NULL, write_pieces, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setRecvLowWater", NULL, set_recv_low_water, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  NAPI_CALL(env, napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
