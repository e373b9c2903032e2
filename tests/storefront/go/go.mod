module keyvault.example/storefront

go 1.19

require keyvault.example/client v0.0.0

replace keyvault.example/client => ../../../clients/go
