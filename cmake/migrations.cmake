# commerce_embed_migrations(<target> <migrations_dir> <c_symbol>)
#
# embeds every <migrations_dir>/NNNN_name.sql into <target> at build time as
#
#   const cm_migration <c_symbol>[];     /* sorted by version (cm_db.h) */
#   const size_t <c_symbol>_count;
#
# in a C file generated under ${CMAKE_BINARY_DIR}/gen/migrations, never in
# the source tree. the sql travels as byte arrays, so quotes, backslashes
# and $$ bodies need no escaping and the checksum cm_db_migrate records is
# that of the file's exact bytes. the directory is globbed with
# CONFIGURE_DEPENDS, so adding a file re-runs cmake; editing one
# re-generates the C file. the target must link commerce_common (cm_db.h).
# declare the symbols where they are used:
#
#   extern const cm_migration ord_migrations[];
#   extern const size_t ord_migrations_count;
set(COMMERCE_EMBED_MIGRATIONS_SCRIPT ${CMAKE_CURRENT_LIST_DIR}/embed_migrations.cmake)

function(commerce_embed_migrations target dir symbol)
  if(NOT TARGET ${target})
    message(FATAL_ERROR "commerce_embed_migrations: no target ${target}")
  endif()
  if(NOT symbol MATCHES "^[A-Za-z_][A-Za-z0-9_]*$")
    message(FATAL_ERROR "commerce_embed_migrations: ${symbol} is not a C identifier")
  endif()
  get_filename_component(dir ${dir} ABSOLUTE)
  if(NOT IS_DIRECTORY ${dir})
    message(FATAL_ERROR "commerce_embed_migrations: no directory ${dir}")
  endif()
  file(GLOB sqls CONFIGURE_DEPENDS ${dir}/*.sql)
  set(out ${CMAKE_BINARY_DIR}/gen/migrations/${target}_${symbol}.c)
  add_custom_command(
    OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -DDIR=${dir} -DSYMBOL=${symbol} -DOUTPUT=${out}
            -P ${COMMERCE_EMBED_MIGRATIONS_SCRIPT}
    DEPENDS ${sqls} ${COMMERCE_EMBED_MIGRATIONS_SCRIPT}
    COMMENT "embedding migrations ${dir} as ${symbol}"
    VERBATIM)
  target_sources(${target} PRIVATE ${out})
endfunction()
