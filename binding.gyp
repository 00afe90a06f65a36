{
  "targets": [
    {
      "target_name": "fsext",
      "sources": ["src/native/fsext.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
    }
  ]
}
