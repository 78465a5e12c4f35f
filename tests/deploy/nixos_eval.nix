# Evaluates deploy/nixos/module.nix with nixpkgs' own module system (lib.evalModules from a nixpkgs `lib`
# directory), without the rest of NixOS or the package set, which are not here:
#
#   * the NixOS options the module sets (assertions, networking.firewall.allowedTCPPorts,
#     systemd.services.<name>.{description,wantedBy,wants,after,environment,serviceConfig}) are declared
#     with the types NixOS gives them, and nothing else is;
#   * `pkgs.formats.toml` checks the same value types but writes no file (nixpkgs' runs remarshal, a
#     build): the path it returns names the file, and `settings` below is the data that file would hold,
#     which the test validates with llmhost's own settings model;
#   * `package` is a derivation-shaped attribute set whose out path is `packagePath`.
#
# nix-instantiate --eval --strict --json tests/deploy/nixos_eval.nix \
#   --arg lib 'import /path/to/nixpkgs/lib' --arg module ./deploy/nixos/module.nix \
#   --argstr packagePath /opt/llmhost --arg settings '{ host = "0.0.0.0"; }'
{
  lib,
  module,
  packagePath,
  settings,
}:

let
  unitValue = lib.types.oneOf [
    lib.types.bool
    lib.types.int
    lib.types.str
    (lib.types.listOf (lib.types.either lib.types.int lib.types.str))
  ];

  nixosOptions = {
    options = {
      assertions = lib.mkOption {
        type = lib.types.listOf lib.types.unspecified;
        default = [ ];
      };
      networking.firewall.allowedTCPPorts = lib.mkOption {
        type = lib.types.listOf lib.types.port;
        default = [ ];
      };
      systemd.services = lib.mkOption {
        default = { };
        type = lib.types.attrsOf (
          lib.types.submodule {
            options = {
              description = lib.mkOption { type = lib.types.str; };
              wantedBy = lib.mkOption {
                type = lib.types.listOf lib.types.str;
                default = [ ];
              };
              wants = lib.mkOption {
                type = lib.types.listOf lib.types.str;
                default = [ ];
              };
              after = lib.mkOption {
                type = lib.types.listOf lib.types.str;
                default = [ ];
              };
              environment = lib.mkOption {
                type = lib.types.attrsOf (lib.types.nullOr (lib.types.either lib.types.str lib.types.path));
                default = { };
              };
              serviceConfig = lib.mkOption {
                type = lib.types.attrsOf unitValue;
                default = { };
              };
            };
          }
        );
      };
    };
  };

  jsonFormat = {
    type =
      let
        value = lib.types.nullOr (
          lib.types.oneOf [
            lib.types.bool
            lib.types.int
            lib.types.float
            lib.types.str
            (lib.types.attrsOf value)
            (lib.types.listOf value)
          ]
        );
      in
      lib.types.attrsOf value;
    generate = name: _value: "/nix/store/00000000000000000000000000000000-${name}";
  };

  pkgs = {
    formats.toml = { }: jsonFormat;
  };

  package = {
    type = "derivation";
    name = "llmhost";
    outPath = packagePath;
    meta = { };
  };

  evaluated = lib.evalModules {
    modules = [
      nixosOptions
      module
      {
        services.llmhost = {
          enable = true;
          inherit package;
        }
        // settings;
      }
    ];
    specialArgs = { inherit pkgs; };
  };

  inherit (evaluated) config;
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  firewall = config.networking.firewall.allowedTCPPorts;
  service = config.systemd.services.llmhost;
  settings = config.services.llmhost.extraSettings;
}
